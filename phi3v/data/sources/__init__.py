"""Where datasets come from: the hub (real) or the demo's generators (synthetic), in the hub's layouts."""
