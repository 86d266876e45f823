import sys

from worker.app import main

main(sys.argv[1:])
