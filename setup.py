"""Packaging lives in setup.cfg; this stub lets older pips install in editable mode."""
from setuptools import setup

setup()
