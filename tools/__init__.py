"""Command-line views for people: the clip index as tables and plots (inspect-index), flow as pictures (show-flow).

They read what the stages wrote; the library (pipeline/) knows nothing of them."""
