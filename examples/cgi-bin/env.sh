#!/bin/sh
# Shows the CGI environment the script received, one NAME=value per line.
printf 'Content-Type: text/plain\r\n\r\n'
env | sort
