"""HTTP edge for the NodeODM API."""
