"""One-off studies behind the model's design choices, kept runnable as commands."""
