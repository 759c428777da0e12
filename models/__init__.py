"""The flight-delay model's code, shared by training (train.py) and serving (service.py)."""
