"""Seed 003's app, as it was: bottle serving one page. Nothing in it knows about compose_stack."""

import bottle

app = bottle.Bottle()


@app.route("/")
def hello():
    return "Hello from docker!"
