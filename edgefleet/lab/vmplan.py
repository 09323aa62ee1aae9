"""Pure parts of the lab VM: its port, kernel variants, provisioning files, qemu argv, inventory.

The VM is one full arm64 machine (qemu-system-aarch64 `virt`, TCG) that runs the real Debian
kernel, systemd, sshd and sudo. It is provisioned at image build time the way a board is
provisioned once by hand: an unprivileged deploy user who owns the device root, may read the
journal, and may run through sudo only the fixed commands a deploy needs (`sudoers_text`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgefleet.lab import plan
from edgefleet.render import CONTAINER_NAME, TUNING_SCRIPT_PATH, TUNING_UNIT, UNIT_NAME

__all__ = [
    "NAME", "DOCKER_NAME", "BOARD", "docker_commands", "DEPLOY_USER", "KERNELS", "SSH_PORT_BASE", "VmSpec", "ssh_port",
    "provision_files", "sudoers_text", "qemu_argv", "inventory_yaml", "INVENTORY_FILE",
]

NAME = "lab-vm"
DOCKER_NAME = "lab-vm-docker"  # the variant with Debian's docker engine: a target with `ship: image`
BOARD = "qemu-virt"
DEPLOY_USER = "deploy"
DEVICE_ROOT = "/opt/edgefleet"
SERVICE_USER = "edgefleet"
# 2190..2199: below every container range (2200 + 100*slot + 1..99), one port per slot
SSH_PORT_BASE = 2190
INVENTORY_FILE = "lab-vm.yaml"
# page size -> Debian kernel package[/suite]: bookworm has no 16K flavour, its backports do
KERNELS = {"4k": "linux-image-arm64", "16k": "linux-image-arm64-16k/bookworm-backports"}
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyAMA0 net.ifnames=1 quiet"


@dataclass(frozen=True)
class VmSpec:
    """How to run the VM: machine shape and kernel variant (a recipe input)."""

    kernel: str = "4k"
    cpus: int = 4
    memory_mb: int = 2048
    cpu_model: str = "cortex-a76"
    docker: bool = False  # the variant with docker.io (packages-docker.txt), target lab-vm-docker

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise plan.LabInputError(f"kernel: expected one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if not 1 <= self.cpus <= 8:
            raise plan.LabInputError(f"cpus: expected 1..8, got {self.cpus}")
        if not 512 <= self.memory_mb <= 8192:
            raise plan.LabInputError(f"memory_mb: expected 512..8192, got {self.memory_mb}")

    @property
    def kernel_package(self) -> str:
        return KERNELS[self.kernel]

    @property
    def target_name(self) -> str:
        return DOCKER_NAME if self.docker else NAME

    @property
    def variant(self) -> str:
        """Return the image's name stem: kernel, plus `-docker` for the docker variant."""
        return f"{self.kernel}-docker" if self.docker else self.kernel


def ssh_port() -> int:
    """Return the VM's forwarded SSH port on 127.0.0.1 for this lab slot."""
    return SSH_PORT_BASE + plan.slot()


def docker_commands() -> list[str]:
    """Return the docker commands an image-mode deploy runs as root (sudoers syntax, no shell).

    Fixed argv only: load an image from stdin, list image IDs, remove one image by its full ID,
    inspect the runtime's container. None of them runs a container; the runtime unit does.
    """
    return [
        "/usr/bin/docker load --quiet",
        "/usr/bin/docker image ls --quiet --no-trunc",
        "/usr/bin/docker ^image rm [0-9a-f]{64}$",
        f"/usr/bin/docker container inspect {CONTAINER_NAME}",
    ]


def sudoers_text(user: str = DEPLOY_USER, root: str = DEVICE_ROOT, service_user: str = SERVICE_USER,
                 docker: bool = False) -> str:
    """Return /etc/sudoers.d text: exactly the root-only commands of a deploy, no shell.

    Everything under the device root the deploy user owns and writes without sudo. Installing a
    unit is still root-equivalent by nature (a unit can run anything as root): the list keeps
    the surface small and fixed, it does not make the deploy user untrusted. `docker`: also the
    fixed docker commands of an image-mode deploy (`docker_commands`), not the docker group.
    """
    sha = f"{root}/objects/[0-9a-f]{{64}}"
    commands = [
        f"/usr/sbin/useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin {service_user}",
        f"/usr/bin/install ^-m 0644 {sha} /etc/systemd/system/{_re(UNIT_NAME)}$",
        f"/usr/bin/install ^-m 0644 {sha} /etc/systemd/system/{_re(TUNING_UNIT)}$",
        f"/usr/bin/install ^-D -m 0755 {sha} {_re(TUNING_SCRIPT_PATH)}$",
        "/usr/bin/systemctl daemon-reload",
    ] + [f"/usr/bin/systemctl {verb} {unit}" for unit in (UNIT_NAME, TUNING_UNIT)
         for verb in ("enable --quiet --no-reload", "restart", "start", "stop", "reset-failed")]
    commands += docker_commands() if docker else []
    lines = [f"# written by edgefleet.lab.vmplan: what `invoke deploy` runs as root on {NAME}",
             f"Defaults:{user} !lecture",
             "Cmnd_Alias EDGEFLEET_DEPLOY = " + ", \\\n    ".join(commands),
             f"{user} ALL=(root) NOPASSWD: EDGEFLEET_DEPLOY", ""]
    return "\n".join(lines)


def _re(literal: str) -> str:
    """Return `literal` as a sudoers regex piece: dots in brackets (no backslashes to escape)."""
    return literal.replace(".", "[.]")


def sshd_config() -> str:
    """Return the VM's sshd drop-in: keys only, the deploy user only, one host key."""
    return ("# written by edgefleet.lab.vmplan\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"PermitRootLogin no\nAllowUsers {DEPLOY_USER}\nUseDNS no\n")


NETWORK = "[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n"
# containers use the host's network (--network host): no bridge, no NAT rules to set up
DOCKER_DAEMON = '{\n  "bridge": "none",\n  "iptables": false,\n  "ip-masq": false\n}\n'


def provision_files(host_private: bytes, host_public: str, client_public: str,
                    docker: bool = False) -> dict[str, tuple[bytes, int]]:
    """Return {path in the rootfs: (content, mode)} that build.sh copies over the rootfs."""
    home = f"/home/{DEPLOY_USER}"
    extra = {"etc/docker/daemon.json": (DOCKER_DAEMON.encode(), 0o644)} if docker else {}
    return extra | {
        "etc/ssh/ssh_host_ed25519_key": (host_private, 0o600),
        "etc/ssh/ssh_host_ed25519_key.pub": ((host_public + "\n").encode(), 0o644),
        "etc/ssh/sshd_config.d/10-edgefleet-vm.conf": (sshd_config().encode(), 0o644),
        "etc/sudoers.d/edgefleet-deploy": (sudoers_text(docker=docker).encode(), 0o440),
        "etc/systemd/network/10-edgefleet-vm.network": (NETWORK.encode(), 0o644),
        f"{home.lstrip('/')}/.ssh/authorized_keys": ((client_public + "\n").encode(), 0o600),
    }


def recipe_text(docker: bool = False) -> str:
    """Return the generated parts of the recipe (they change the image as files do)."""
    parts = [sudoers_text(docker=docker), sshd_config(), NETWORK, DEPLOY_USER, DEVICE_ROOT]
    return "\n".join(parts + ([DOCKER_DAEMON] if docker else []))


def qemu_argv(spec: VmSpec, kernel: Path, initrd: Path, overlay: Path, port: int,
              qmp_socket: Path, serial_log: Path, pidfile: Path) -> list[str]:
    """Return the qemu-system-aarch64 command line (TCG, loopback-only user networking)."""
    return [
        "qemu-system-aarch64", "-M", "virt", "-accel", "tcg", "-cpu", spec.cpu_model,
        "-smp", str(spec.cpus), "-m", str(spec.memory_mb),
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", KERNEL_CMDLINE,
        "-drive", f"if=none,id=root,format=qcow2,file={overlay}",
        "-device", "virtio-blk-pci,drive=root",
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-display", "none", "-monitor", "none", "-serial", f"file:{serial_log}",
        "-pidfile", str(pidfile), "-daemonize",
    ]


def inventory_yaml(port: int, ssh_key: Path, known_hosts: Path, docker: bool = False) -> str:
    """Return targets/lab-vm.yaml text: the VM as target `lab-vm` (`lab-vm-docker`: `ship: image`)."""
    # a negative nice makes the container's RLIMIT_NICE allow it: ask for one, so the lab exercises it
    device = {"ship": "image", "runtime": {"nice": -5}} if docker else {}
    document = {
        "devices": {
            DOCKER_NAME if docker else NAME: device | {
                "board": BOARD,
                "arch": "arm64",
                "host": "127.0.0.1",
                "port": port,
                "user": DEPLOY_USER,
                "ssh_key": str(Path(ssh_key).resolve()),
                "known_hosts": str(Path(known_hosts).resolve()),
                "sudo": True,
                "governor": "performance",
            },
        },
    }
    header = ("# written by `invoke lab.vm up`; removed by `invoke lab.vm down`\n"
              f"# {DOCKER_NAME if docker else NAME}: one arm64 VM under qemu-system-aarch64 "
              "(see edgefleet/lab/vmplan.py)\n")
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def describe(argv: list[str]) -> str:
    """Return an argv as one shell-quoted line, for logs."""
    return " ".join(shlex.quote(a) for a in argv)
