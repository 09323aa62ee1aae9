"""edgefleet tasks: `invoke --list` shows them all. Bodies live in edgefleet/tasks/<area>.py."""

from invoke import Collection

from edgefleet.paths import DEFAULTS
from edgefleet.tasks import demo, dev, fleet, image, inventory, lab, mender, model, rollout, tune

ns = Collection()
ns.add_collection(model.ns)
ns.add_collection(lab.ns)
ns.add_collection(image.ns)
ns.add_collection(mender.ns)
ns.add_collection(inventory.ns)
for name in ("render", "deploy", "rollback", "status"):
    ns.add_task(fleet.ns.tasks[name])
ns.add_task(rollout.rollout)
ns.add_task(tune.tune)
ns.add_task(demo.demo)
ns.add_task(dev.check)
# sub-collections' `edgefleet` sections would be shadowed by this one: merged here
ns.configure({"edgefleet": {**DEFAULTS, "image": dict(image.DEFAULTS), "mender": dict(mender.DEFAULTS)}})
