"""frontc's built-in passes, one per module (installed as `frontc.passes`)."""
