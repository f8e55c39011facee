"""Tests for clusterodm.store."""
