#!/bin/sh
# The smallest CGI script: headers, a blank line, the body.
printf 'Content-Type: text/plain\r\n\r\n'
printf 'Hello from sh via cgi-fpm\n'
printf 'method=%s query=%s\n' "$REQUEST_METHOD" "$QUERY_STRING"
