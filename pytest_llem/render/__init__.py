"""Figures for people: number formatting, the summary table, comparison text and the PR
comment, the trend and the HTML report."""
