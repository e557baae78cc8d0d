"""What vaereg answers about VAEs."""
