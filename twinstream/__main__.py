from twinstream.cli import run

run()
