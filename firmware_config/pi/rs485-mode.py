#!/usr/bin/env python3
"""Switch a serial port into the Linux kernel's RS-485 mode (TIOCSRS485): the driver drives RTS as the transceiver's
DE/RE direction pin exactly while a frame is sent. Stdlib only; run as root at boot (the mode is not persistent).

    rs485-mode.py /dev/ttyAMA0 [--rts-low] [--delay-before-ms N] [--delay-after-ms N] [--show]
"""

import argparse
import fcntl
import os
import struct
import sys

TIOCGRS485 = 0x542E
TIOCSRS485 = 0x542F
SER_RS485_ENABLED = 1 << 0
SER_RS485_RTS_ON_SEND = 1 << 1
SER_RS485_RTS_AFTER_SEND = 1 << 2
SER_RS485_RX_DURING_TX = 1 << 4
# struct serial_rs485 { u32 flags; u32 delay_rts_before_send; u32 delay_rts_after_send; u32 padding[5]; }
FMT = "IIIIIIII"
# RTS delays are in ms; transceivers need microseconds to a few ms. 1 s bounds a typo without limiting anyone.
MAX_DELAY_MS = 1000


def delay_ms(text: str) -> int:
    """argparse type: an RTS delay in whole ms, 0..MAX_DELAY_MS."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of ms (got {text!r})") from None
    if not 0 <= v <= MAX_DELAY_MS:
        raise argparse.ArgumentTypeError(f"0..{MAX_DELAY_MS} ms (got {v})")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device")
    ap.add_argument("--rts-low", action="store_true", help="DE active low: RTS low while sending")
    ap.add_argument("--delay-before-ms", type=delay_ms, default=0,
                    help=f"RTS asserted this long before the first bit (0..{MAX_DELAY_MS})")
    ap.add_argument("--delay-after-ms", type=delay_ms, default=0,
                    help=f"RTS held this long after the last bit (0..{MAX_DELAY_MS})")
    ap.add_argument("--rx-during-tx", action="store_true", help="keep receiving while sending (echo)")
    ap.add_argument("--show", action="store_true", help="only print the current mode")
    a = ap.parse_args(argv)
    try:
        fd = os.open(a.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        print(f"{a.device}: cannot open ({exc.strerror}); is it the right device, and are you root?", file=sys.stderr)
        return 1
    try:
        cur = struct.unpack(FMT, fcntl.ioctl(fd, TIOCGRS485, bytes(struct.calcsize(FMT))))
        if a.show:
            print(f"{a.device}: flags={cur[0]:#x} enabled={bool(cur[0] & SER_RS485_ENABLED)} "
                  f"before={cur[1]} ms after={cur[2]} ms")
            return 0
        flags = SER_RS485_ENABLED
        flags |= SER_RS485_RTS_AFTER_SEND if a.rts_low else SER_RS485_RTS_ON_SEND
        if a.rx_during_tx:
            flags |= SER_RS485_RX_DURING_TX
        fcntl.ioctl(fd, TIOCSRS485, struct.pack(FMT, flags, a.delay_before_ms, a.delay_after_ms, 0, 0, 0, 0, 0))
        print(f"{a.device}: kernel RS-485 mode on (flags {flags:#x})")
        return 0
    except OSError as exc:
        print(f"{a.device}: the driver does not support RS-485 mode ({exc.strerror}); "
              "use an auto-direction HAT/adapter", file=sys.stderr)
        return 1
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
