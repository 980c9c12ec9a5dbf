"""Everything that shapes the trained model; the Trainer fingerprints this folder for caching."""
