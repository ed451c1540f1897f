#!/bin/sh
echo "$GREETING: I am $(id -un) in $(pwd), on $(uname -s)"
