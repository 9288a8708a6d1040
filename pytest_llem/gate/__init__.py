"""The regression gate without pytest: which metrics it acts on, independent and paired
statistics, and the verdicts (worse, better, unchanged, inconclusive)."""
