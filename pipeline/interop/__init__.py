"""mmaction2 and denseflow interop: rawframes trees in, annotation lists and rawframes out, r3d_18 weights under mmaction2's names."""
