"""Emulators of the Azure DevOps and Kubernetes APIs, and the simulation that drives them."""
