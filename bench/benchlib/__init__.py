"""Helpers of the bench/ scripts: each script keeps its question (arguments and steps), the how lives here."""
