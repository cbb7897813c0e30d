"""The network lab every integration test runs in. See topology.py for the drawing."""

from tests.lab.topology import Host, Lab, Site, Topology, cleanup_stale, list_namespaces

__all__ = ["Host", "Lab", "Site", "Topology", "cleanup_stale", "list_namespaces"]
