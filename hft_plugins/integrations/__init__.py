"""Adapters that put HFT into frameworks; each imports its framework, so import it only when used."""
