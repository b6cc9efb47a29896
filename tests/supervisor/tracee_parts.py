"""Pieces of the Python tracee programs the machinery tests run under a probe policy."""

# A second thread that counts while the main thread waits in a trapped syscall: proves
# the other threads of a program keep running during an agent round trip.
SPINNER = r"""
import ctypes, fcntl, os, signal, threading, time
counter = 0
stop = False
def spin():
    global counter
    while not stop:
        counter += 1
        time.sleep(0.001)
t = threading.Thread(target=spin); t.start()
time.sleep(0.05)
"""
