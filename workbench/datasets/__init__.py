"""Data for the models: small real data sets that ship with the project (``datasets/`` at the
repository root, licences in its README, or built by an installed package), loaders for files a
user drops in, and synthetic generators for scale."""
