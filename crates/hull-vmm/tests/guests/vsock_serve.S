# A tiny 32-bit guest (PVH entry) that serves one vsock connection from the host, as
# hull's agent does: it sets up the three queues and four 4 KiB receive buffers, waits
# for a REQUEST (a host process wrote CONNECT <port> to the hybrid socket), answers
# RESPONSE and prints A, then echoes the payload of the first RW packet back to the
# host and to COM1, waits until the device has taken it, and pulls the reset line.
.set RESP, 0x240000             # the RESPONSE header
.set ECHO, 0x241000             # the echoing RW header, then its payload
.include "vsock_setup.inc"
  xor %edi, %edi                # rx used entries consumed
  mov $0x3f8, %dx
wait_request:
  call next_rx                  # ebx = the packet
  cmpw $1, 30(%ebx)             # op REQUEST
  jne wait_request
  movl $3, RESP                 # src_cid: us
  movl $0, RESP+4
  movl $2, RESP+8               # dst_cid: the host
  movl $0, RESP+12
  mov 20(%ebx), %eax            # the port the host asked for is our source port
  mov %eax, RESP+16
  mov 16(%ebx), %eax            # the host's port is our destination
  mov %eax, RESP+20
  movl $0, RESP+24              # len
  movl $0x00020001, RESP+28     # type STREAM, op RESPONSE
  movl $0, RESP+32
  movl $65536, RESP+36          # buf_alloc
  movl $0, RESP+40              # fwd_cnt
  movl $RESP, TX_DESC
  movl $0, TX_DESC+4
  movl $44, TX_DESC+8
  movl $0, TX_DESC+12
  movw $0, TX_AVAIL+4
  movw $1, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify tx
  mov $'A', %al
  out %al, %dx
wait_data:
  call next_rx
  cmpw $5, 30(%ebx)             # op RW
  jne wait_data
  mov 24(%ebx), %ecx            # len
  and $63, %ecx                 # at most 63 bytes echoed
  mov RESP+16, %eax
  mov %eax, ECHO+16
  mov RESP+20, %eax
  mov %eax, ECHO+20
  movl $3, ECHO
  movl $0, ECHO+4
  movl $2, ECHO+8
  movl $0, ECHO+12
  mov %ecx, ECHO+24             # len
  movl $0x00050001, ECHO+28     # type STREAM, op RW
  movl $0, ECHO+32
  movl $65536, ECHO+36
  mov %ecx, ECHO+40             # fwd_cnt: what we consumed
  lea 44(%ebx), %esi
  mov $ECHO+44, %ebp
  mov %ecx, %eax
  add $44, %eax
  mov %eax, TX_DESC+24          # descriptor 1: header and payload
  movl $ECHO, TX_DESC+16
  movl $0, TX_DESC+20
  movl $0, TX_DESC+28
1:
  movb (%esi), %al
  movb %al, (%ebp)
  out %al, %dx
  inc %esi
  inc %ebp
  dec %ecx
  jnz 1b
  movw $1, TX_AVAIL+6
  movw $2, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify tx
wait_sent:
  cmpw $2, TX_USED+2            # the device has taken both packets
  jne wait_sent
  mov $0xfe, %al
  out %al, $0x64                # reset
  hlt
