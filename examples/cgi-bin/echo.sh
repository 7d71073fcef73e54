#!/bin/sh
# Echoes the request body back, byte for byte, while it is still arriving.
printf 'Content-Type: application/octet-stream\r\n\r\n'
exec cat
