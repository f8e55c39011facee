"""Nodes: typed NodeODM client, registry with online state and slots, health, selection."""
