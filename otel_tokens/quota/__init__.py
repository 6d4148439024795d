"""Quotas: the vocabulary (scopes, windows, kinds, actions), the quota file, decisions, and the two
enforcement modes behind one facade (`enforcement`): alert mode (`alert/`: follows the ruler's alerts)
and budget mode (`budget/`: reserves in a shared store). Importing this package loads nothing else."""
