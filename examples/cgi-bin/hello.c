/* A compiled CGI program: cc -O2 -o hello hello.c */
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    const char *method = getenv("REQUEST_METHOD");
    const char *query = getenv("QUERY_STRING");
    printf("Content-Type: text/plain\r\n\r\n");
    printf("Hello from C via cgi-fpm\n");
    printf("method=%s query=%s\n", method ? method : "", query ? query : "");
    return 0;
}
