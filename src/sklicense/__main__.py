from sklicense.cli import app

app(prog_name="sklicense")
