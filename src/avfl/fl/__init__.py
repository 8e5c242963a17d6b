"""Federated learning: client data on the device, local training, aggregation, the round loop."""
