"""ClusterODM: one NodeODM-API address in front of many processing nodes."""

__version__ = "0.1.0"

#: The NodeODM API version the proxy speaks in its own ``/info``, as the original does.
API_VERSION = "1.5.3"
