"""Datasets: audio decoding and importers for the audiofolder layout and text tables."""
