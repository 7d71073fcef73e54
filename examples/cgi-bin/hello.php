<?php
// Run through cgi.interpreter[.php] = /usr/bin/php-cgi
header('Content-Type: text/plain');
echo "Hello from PHP via cgi-fpm\n";
printf("method=%s query=%s\n", $_SERVER['REQUEST_METHOD'] ?? '', $_SERVER['QUERY_STRING'] ?? '');
