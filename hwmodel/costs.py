"""Cost profiles: what userspace cannot do for real, in ns.

A profile names the latency of the IOMMU's invalidations, the page walk
that an IOTLB miss costs the device's access, the extra cost of
a page-table write where the IOMMU's walker is not cache-coherent, the
refresh that must follow every map where a hypervisor shadows the IOMMU's
tables, the hypercall of a paravirtualised IOMMU, and the device's own time
per I/O.
The harness turns them into busy-waits on the cycle counter, because the
kernel spends that time polling too.  Profiles are TOML files under
configs/profiles/; a user's own file works the same way.
"""
from dataclasses import dataclass, fields

FIELDS = {
    "inv_page_ns": "page-selective IOTLB invalidation, submit to completion",
    "inv_domain_ns": "domain-wide (or global) IOTLB invalidation",
    "pte_write_ns": "per page-table entry written, beyond the store itself",
    "walk_ns": "per IOTLB miss, the page walk the device's access waits for",
    "map_sync_ns": "per map, a refresh of the new range (iotlb_sync_map: s390 under a hypervisor)",
    "hypercall_ns": "per map and per unmap, for a paravirtualised IOMMU (PVDMA)",
    "device_ns": "the device's own time per I/O",
}


@dataclass(frozen=True)
class Profile:
    name: str = "none"
    inv_page_ns: float = 0.0
    inv_domain_ns: float = 0.0
    pte_write_ns: float = 0.0
    walk_ns: float = 0.0
    map_sync_ns: float = 0.0
    hypercall_ns: float = 0.0
    device_ns: float = 0.0

    def cycles(self, field, cycles_per_ns):
        return int(round(getattr(self, field) * cycles_per_ns))


def from_dict(name, data):
    """A Profile from a mapping of FIELDS; raises ValueError naming the key."""
    known = {f.name for f in fields(Profile)} - {"name"}
    values = {}
    for k, v in data.items():
        if k not in known:
            raise ValueError("unknown key %r; valid keys: %s" % (k, ", ".join(sorted(known))))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v > 1e9:
            raise ValueError("%s: expected a number of ns in 0..1e9, got %r" % (k, v))
        values[k] = float(v)
    return Profile(name=name, **values)
