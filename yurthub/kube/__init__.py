"""Kubernetes API semantics shared by yurthub's offline answers and the simulated cloud:
label and field selectors, merge/JSON/strategic patches, and kubectl Tables."""
