"""The report page: what a run made, as one HTML file that opens from the file system (figures.py
draws, page.py lays out; stages/report.py gathers the stage outputs)."""
