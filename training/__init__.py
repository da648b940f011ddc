"""Training code for the models the project ships; not part of the installed package."""
