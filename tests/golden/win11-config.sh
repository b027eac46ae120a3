# Written by cygvm for this image; read by bootstrap.sh.
CYGVM_USER='cygvm'
CYGVM_ADDRESS='192.168.0.1'
CYGVM_NETMASK='255.255.255.0'
CYGVM_NETWORK='192.168.0.0'
CYGVM_PREFIX='24'
CYGVM_DHCP='no'
CYGVM_LEGACY='no'
