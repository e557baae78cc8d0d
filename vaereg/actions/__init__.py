"""Things vaereg does to files: each plans first, and only the plan's execute() touches the disk."""
