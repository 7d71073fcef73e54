#!/usr/bin/env python3
"""A CGI script in Python: run through cgi.interpreter[.py]."""
import os
import sys

sys.stdout.write("Content-Type: text/plain\r\n\r\n")
sys.stdout.write("Hello from python3 via cgi-fpm\n")
sys.stdout.write("method=%s query=%s\n" % (os.environ.get("REQUEST_METHOD", ""), os.environ.get("QUERY_STRING", "")))
