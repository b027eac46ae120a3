@rem Written by cygvm for this image; read by firstlogon.cmd.
set "CYGVM_MARKER=CYGVM.TAG"
set "CYGVM_INSTALLER=setup-x86_64.exe"
set "CYGVM_SETUP_FLAGS=-q -L -n -N -d -X"
set "CYGVM_ROOT=C:\cygwin64"
set "CYGVM_PACKAGES=openssh,make,gcc-g++"
set "CYGVM_SHUTDOWN=shutdown.exe /s /t 0"
