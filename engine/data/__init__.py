"""Datasets: bring your own audio and text, check it, store it, inspect it, export it.

archives (uploads, safe unzip) -> importers (any layout -> rows, column detection) ->
validation (the import report) -> splits -> pipeline (check, then write 16 kHz FLAC) ;
inspect (SQL statistics, waveform and log-mel of a clip) ; export (audiofolder zip) ;
audio (decode any file to 16 kHz mono for the models).
"""
