"""Who may use the cluster: access providers (``--cloud-provider``) and the flood monitor."""
