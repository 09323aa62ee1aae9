"""edgefleet tasks: `invoke --list` shows them all. Bodies live in edgefleet/tasks/<area>.py."""

from invoke import Collection

from edgefleet.paths import DEFAULTS
from edgefleet.tasks import demo, fleet, lab, model, rollout

ns = Collection()
ns.add_collection(model.ns)
ns.add_collection(lab.ns)
for name in ("render", "deploy", "rollback", "status"):
    ns.add_task(fleet.ns.tasks[name])
ns.add_task(rollout.rollout)
ns.add_task(demo.demo)
ns.configure({"edgefleet": dict(DEFAULTS)})
