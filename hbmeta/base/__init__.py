"""Foundations every stage uses: argument checks, PRNG keys, progress display, atomic files and parameter files."""
