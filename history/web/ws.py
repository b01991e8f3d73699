"""Blueprint stub: filled in by its issue."""
from flask import Blueprint

bp = Blueprint("ws", __name__)
