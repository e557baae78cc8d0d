"""Answers about VAEs: relations, health, the check verdict, what a launcher lists."""
