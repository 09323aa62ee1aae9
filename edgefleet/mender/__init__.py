"""Edgefleet releases as signed Mender artifacts, installed by mender-client with the deploy's health gate."""
