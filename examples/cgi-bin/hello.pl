#!/usr/bin/perl
# A CGI script in Perl: run through cgi.interpreter[.pl].
use strict;
use warnings;

print "Content-Type: text/plain\r\n\r\n";
print "Hello from perl via cgi-fpm\n";
printf "method=%s query=%s\n", $ENV{REQUEST_METHOD} // '', $ENV{QUERY_STRING} // '';
