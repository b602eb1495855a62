"""NVIDIA's CUDA apt repository for a node, derived from its facts (dl_stack's toolkit install).

NVIDIA publishes one flat repository per distribution release and architecture:
<base>/ubuntu2204/x86_64/, <base>/ubuntu2404/x86_64/, <base>/debian12/x86_64/, ... (arm64
servers: sbsa). The base URL (NVIDIA's or a mirror) is tpserve_cuda_apt_repos in
group_vars/all/cuda_stack.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

# ansible_facts.architecture -> NVIDIA's directory name
ARCHES = {"x86_64": "x86_64", "aarch64": "sbsa"}
# ansible_facts.distribution -> (NVIDIA's prefix, which version fact names the release)
DISTROS = {
    "Ubuntu": ("ubuntu", "distribution_version"),
    "Debian": ("debian", "distribution_major_version"),
}


def cuda_apt_distro(facts: dict) -> str:
    """'ubuntu2204' for Ubuntu 22.04, 'ubuntu2404' for 24.04, 'debian12' for Debian 12."""
    dist = facts.get("distribution", "")
    if dist not in DISTROS:
        raise AnsibleFilterError(
            f"no CUDA apt repository for distribution '{dist or 'unknown'}' (apt-based: "
            f"{', '.join(sorted(DISTROS))}): install the CUDA toolkit yourself and point "
            "tpserve_cuda_home at it, or set dl_stack_cuda_apt_repo_url"
        )
    prefix, fact = DISTROS[dist]
    version = str(facts.get(fact, "")).replace(".", "")
    if not version.isdigit():
        raise AnsibleFilterError(
            f"{dist}: cannot read the release from ansible_facts.{fact} ('{version}')"
        )
    return f"{prefix}{version}"


def cuda_apt_repo_url(facts: dict, base: str) -> str:
    """<base>/<distro><release>/<arch>/ for the node whose facts these are."""
    arch = facts.get("architecture", "")
    if arch not in ARCHES:
        raise AnsibleFilterError(f"no CUDA apt repository for architecture '{arch or 'unknown'}'")
    return f"{base.rstrip('/')}/{cuda_apt_distro(facts)}/{ARCHES[arch]}/"


class FilterModule:
    def filters(self) -> dict:
        return {"cuda_apt_distro": cuda_apt_distro, "cuda_apt_repo_url": cuda_apt_repo_url}
