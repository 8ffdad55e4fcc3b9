"""Analysis: parameter and multiply-add profiles, architecture drawings."""
